"""Licenses: installed license keys (signed documents) and the robot seats they give."""
