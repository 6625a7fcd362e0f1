"""Stage 5, building: the engine, the build context and the build with live progress."""
