"""The launch flow (and, later, the sweep flow) and their tasks."""
