"""The pure core: request models, rendering and tokens, the prefix planner, KV admission, the
values that cross the engine seam, and output records. May import: vbatch's base modules only
(no engine, no files, no torch)."""
