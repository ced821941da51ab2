"""tagseg.evaluation"""
