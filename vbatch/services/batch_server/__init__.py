"""The batch server: OpenAI's Files and Batches API inside `vbatch serve`'s vLLM server.

`middleware` is loaded into the server with vLLM's --middleware; it answers /v1/files and
/v1/batches (`api`) and runs the batches on the server's own engine (`executor`); the catalog
and the files live in vbatch's state directory (`storage.catalog`, `storage.filestore`).
"""
