"""Device targets: profiles (data in `targets/*.yaml`) and one small plug-in per
runtime (available / compile / load). Build-side code, but torch-free: `engine
build` runs on a Jetson that has no torch."""
