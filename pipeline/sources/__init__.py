"""Sources: readers for every format, read ranges planned on the driver, duplicate keys across ranges, image loading."""
