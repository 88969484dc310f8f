"""paella-serve: the inference pipeline as an HTTP service that batches concurrent requests.

    paella-serve --checkpoint ckpts/paella_v1 --port 8000     # or python -m paella_jax.serve

See docs/serve.md: `app` (the endpoints), `batcher` (grouping requests into sampler calls),
`requests` (request bodies -> paella-sample arguments and sidecars), `metrics`.
"""
