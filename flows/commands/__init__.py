"""Back-ends of the commands that are not the main job: `master verify`, `master plan`, `master
show-prompts`, `master versions` and `master diff`."""
