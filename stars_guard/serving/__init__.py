"""The services: the guarded OpenAI-compatible chat API (`stars-guard serve`), lockstep batching of
concurrent requests, the TEI-compatible reward service (`stars-guard serve-reward`) and the live
dashboard. Never imports LangChain. Needs `pip install 'stars-guard[server]'`.
"""
