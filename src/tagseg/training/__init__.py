"""tagseg.training"""
