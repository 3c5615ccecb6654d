"""Fine-tuning SAM, by job:

    config.py           TrainConfig: every setting, defaults once, derived fields, checks
    data.py             COCO, SA-1B and label-image data sets (the checked reader of io.coco), per-example
                        preparation (only the sampled masks decoded), the Grain pipeline
    augment.py          flips, 90-degree rotations, zoom, crops and colour jitter of an image and its masks
    embedding_cache.py  image embeddings computed once for a frozen encoder
    prompts.py          prompt simulation (points, noisy boxes, correction clicks)
    rollout.py          the simulated interaction and its loss, per batch
    losses.py           focal, dice and IoU-head losses
    optim.py            AdamW with the paper's schedule (optax)
    step.py             the compiled training step
    sharding.py         where the state and the batch live on a (data, fsdp) mesh
    trainable.py        compute dtype, remat and the trainable/frozen split
    lora.py             LoRA factors on the image encoder's attention, merged into plain weights
    run_folder.py       the output folder: record, metrics, Orbax state, the best and the last model
    events.py           TensorBoard event files, written without TensorBoard
    trainer.py          Trainer: the loop, validation by `sam_jax.evaluation` (the code of `sam-jax eval`),
                        model selection and early stopping
    export.py           the model of any saved training state, as a checkpoint folder
    synthetic_shapes.py a generated COCO data set of shapes (notebooks, tests, benchmarks)
"""
