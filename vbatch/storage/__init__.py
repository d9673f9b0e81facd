"""What touches the disk: input readers, result writers, the run journal (resume records,
output naming, locks). May import: core and vbatch's base modules."""
