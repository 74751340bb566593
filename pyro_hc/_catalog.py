"""Names of the built-in models and data sets, importable without torch (for a fast ``pyro-hc``).

``pyro-hc --help`` and ``pyro-hc list`` read these instead of importing the models; the test
suite checks they equal :func:`pyro_hc.list_models` and :func:`pyro_hc.list_datasets`.
"""

MODELS = ("cohiclust", "deepect", "hcrl1", "hcrl2", "kdae", "kdvae", "vade", "vae", "vae_ncrp")
DATASETS = ("20newsgroups", "cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "synthetic_tree", "usps")

#: the array files ``Dataset.from_file`` and ``pyro-hc fit --data`` read (besides image folders)
FILE_FORMATS: tuple[str, ...] = (".npy", ".npz", ".pt", ".pth", ".csv", ".tsv")
