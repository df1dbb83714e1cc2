"""The data's stage: generated faces (`synth`), photo folders read into manifests (`ingest`),
duplicate groups that keep copies of one picture in one split (`leakage`), and the splits a run
trains on (`dataset`)."""
