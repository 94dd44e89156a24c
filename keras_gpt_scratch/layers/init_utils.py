"""Initializer copies, so that no two weights start from the same draw."""

import keras


def clone_initializer(initializer):
    """A fresh instance of `initializer` for one weight.

    Keras 3 fixes an unseeded initializer's seed when the instance is made,
    so one instance used for two weights of the same shape gives both the
    same values: every query, key and value kernel, in every block, would
    start identical, and training is much slower (the book's chapter-5 run
    stalled; issue #10). Every sublayer gets its own copy, as keras_hub's
    models do. A copy of an unseeded initializer draws a new seed from
    Keras' global seed (`keras.utils.set_random_seed` keeps runs
    reproducible); an explicitly seeded one keeps its seed, and a string
    is returned as is (Keras makes a new instance from it for each weight).
    """
    if isinstance(initializer, keras.initializers.Initializer):
        return initializer.__class__.from_config(initializer.get_config())
    return initializer
