"""capojax's vLLM worker extension (runs inside the vLLM server's worker processes, not in the trainer).

Start the server with this folder on PYTHONPATH and
`--worker-extension-cls capojax_vllm_ext.worker_extension.CapojaxWorkerExtension`; `scripts/serve_vllm.py`
does both. See worker_extension.py for the methods and NOTICE for provenance.
"""

EXTENSION_CLS = "capojax_vllm_ext.worker_extension.CapojaxWorkerExtension"
