"""The built-in demo (``deit demo``) and its benchmarks on mnist5k: the recipes (``recipe``), the
convnet teacher (``teacher``) and the pre-training demo (``pretrain``). Nothing here is needed to
train on your own data; ``deit.train`` holds what every run needs.
"""
