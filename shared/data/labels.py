"""The label conventions every part of the pipeline shares."""

#: The label of pixels that count in no loss and no metric: ADE20K's class 0 ("other") after
#: MMSegmentation's reduce_zero_label, and the padding of crops and of validation batches.
IGNORE_INDEX = 255
