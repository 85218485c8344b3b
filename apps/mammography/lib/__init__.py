"""The MammoXAI MONAI Label app's building blocks: infer task, validating datastore, HTTP error mapping."""
