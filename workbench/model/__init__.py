"""The model's stage: the tf.data input pipeline and its augmentation (`pipeline`), the
backbones and their heads (`backbones`), and one training of one configuration (`train`)."""
