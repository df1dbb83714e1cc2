"""Scores and their pictures, shared by training and by every reader of runs: metrics of
predictions (`evaluate`), intervals and paired tests (`stats`), and the figures a run logs
(`figures`)."""
