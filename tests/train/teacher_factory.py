"""Factories for the ``module:callable`` teacher spec in test_teacher.py."""

from deit.demo.teacher import SmallConvNet


def make_teacher():
    return SmallConvNet(num_classes=4)


def make_not_a_module():
    return "not a module"
