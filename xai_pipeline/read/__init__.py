"""For people and search engines: query, export, show, report and the pictures they draw. Starts
without torch or Ray (``show --compare`` loads a model when asked)."""
