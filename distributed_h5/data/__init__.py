"""The data layer: the file layout and its validation, the shard plan, the read path, clip
sampling, synthetic data and video conversion. Imports numpy, h5py and codecs only (no
framework: ``tests/unit/test_layers_of_the_package.py`` checks), so it serves any trainer.

* :mod:`.sharding`: which sample indices each rank reads, a pure function;
* :mod:`.dataset`: the HDF5 layout, :func:`~.dataset.describe` and every refusal of a bad file;
* :mod:`.reader`: :class:`~.reader.BatchReader`, the one read path;
* :mod:`.preads`: what the byte readers share (threads, ``preadv`` until full, close);
* :mod:`.augment`: clip sampling and augmentation (numpy);
* :mod:`.synthetic`, :mod:`.convert`: files made from nothing, or from videos;
* :mod:`.outputs`: checks and atomic writes of the files the package produces;
* :mod:`.checks`: argument checks shared by the layers (positive integers and pairs);
* :mod:`.jpeg`: the JPEG clip layout, its writer and its threaded decoder.
"""
