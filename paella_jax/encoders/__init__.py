"""Run-time encoders and codecs: text encoders (prompts -> conditioning), the VQ codecs
(images <-> codes) and the FID Inception, each read from a checkpoint written by `convert`."""
