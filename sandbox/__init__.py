"""Run approved analyst code beside the data in a locked-down container and vet its output."""
