"""Analysis views of a model: what its vectors look like and where it sits in its loss surface.

    embed.py       token and sentence vectors of texts (mean or [CLS] pooling, any layer)
    similarity.py  cosine similarity of one word's contextual vectors across sentences
    landscape.py   the loss along filter-normalised random directions (Li et al. 2018)

The stages (plmkit/stages/{embed,similarity,landscape}.py) read files, call these, and write.
"""
