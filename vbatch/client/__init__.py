"""The client side of OpenAI's Batch API: the helper library (`from vbatch import Batch`, in
`batch`) and the services of `vbatch submit` and `vbatch batches` (`batches`), for a vbatch
server, OpenAI or any OpenAI-compatible batch API; `local` runs a `Batch` in this process.

`openai` is imported only inside functions here, so `import vbatch` and `vbatch --help` stay light.
"""
