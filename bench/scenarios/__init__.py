"""One module per measured path; each exposes run(env, quick) -> a result dict."""
