"""Small shared helpers with no detectron2 dependency (files, command lines)."""
