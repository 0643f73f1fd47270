"""The app shell: the command line, settings, the composition root, the ASGI app and Ray Serve.
The only layer that imports Ray, Starlette or uvicorn, and the only one that wires areas together."""
