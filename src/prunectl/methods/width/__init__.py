"""What the width methods share (flap, wanda-sp, mag-sp, slimgpt, taylor, magnitude, puzzle):
unit shapes and head units (``units``), activation statistics (``statistics``, ``collect``),
channel metrics (``metrics``), head / channel selection (``selection``), bias compensation
(``compensation``) and the refits: least squares (``least_squares``, ``moments``,
``sequential``, ``reconstruct``, ``hooks``) and OBS (``obs``).  A method package imports these,
never another method package.
"""
