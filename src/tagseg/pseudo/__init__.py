"""tagseg.pseudo"""
