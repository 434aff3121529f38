"""The deployed policy: an OpenAI-compatible API, feedback endpoints, a web page, and the feedback store.

``store.FeedbackStore`` (SQL), ``service.ServeService`` (logic, hot swap), ``app.create_app`` (routes),
``server.run_in_thread`` (a background server for tests and the online loop), ``batcher.Batcher`` (concurrent
requests share ``generate`` calls), ``decode.TokenStream`` (a streaming request's text as its tokens decode).
"""
