"""tagseg.models"""
