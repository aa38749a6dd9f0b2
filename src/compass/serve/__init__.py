"""`compass serve`: one folder of compass files answers image requests of every width from a prefix of each file.

`app` is the HTTP side (Starlette on uvicorn, the `serve` extra); `library` maps names to files and locates their
layers; `decoder` decodes layers in a process pool, one decode per layer however many requests wait for it;
`cache` keeps what was decoded on disk; `gallery` is the page; `config` holds every limit; `process` runs a server
as a child process (tests, benchmark). docs/serving.md.
"""
