"""tagseg.addons"""
