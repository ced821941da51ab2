"""tagseg.data"""
