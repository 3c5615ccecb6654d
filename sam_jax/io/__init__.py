"""Files in and out, on the host: images (`images`), mask encodings (`rle`), data-set formats
(`sa1b`, `coco`), drawings (`overlay`), and the rules every output follows (`outputs`: atomic
writes, what may be replaced; `stamps`: what made an output). No device code."""
