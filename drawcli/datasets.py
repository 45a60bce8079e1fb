"""The registry of data sets: files, checksums, mirrors, image shape, splits.

Pure data, no I/O and no torch. The loader (data.py) and the downloader
(download.py) both read it, so a data set is described exactly once.

Authority for integrity is the sha256 of each file's *decompressed* contents:
it does not depend on how a mirror gzipped the file. The official archives'
own hashes are kept as a fast path for files that came from an official host.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataFile:
    role: str  # train_images, train_labels, test_images, ... (what the loader asks for)
    name: str  # decompressed file name under DATA_DIR/<dataset>/
    sha256: str  # of the decompressed contents: the authority
    size: int  # decompressed size in bytes
    remote: str  # file name on the mirrors (often NAME.gz)
    remote_md5: str | None = None  # official archive's md5 (fast path only)
    remote_size: int | None = None  # the official archive's size (a mirror's gzip may differ a little)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is base + remote
    height: int = 28
    width: int = 28
    kind: str = "idx"  # idx (IDX ubyte) or amat (rows of 0/1 digits)
    prebinarized: bool = False  # pixels already 0/1: no further binarisation
    splits: tuple[str, ...] = ("train", "test")

    def file(self, role: str) -> DataFile:
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(role)

    @property
    def size(self) -> int:
        """Bytes on disk once unpacked."""
        return sum(f.size for f in self.files)

    @property
    def download_size(self) -> int:
        """About the bytes a download fetches (the official archives; unpacked files count as they are)."""
        return sum(f.remote_size or f.size for f in self.files)


MNIST = DatasetSpec(
    name="mnist",
    description="MNIST handwritten digits, 60k train / 10k test, grey levels",
    files=(
        DataFile(
            "train_images",
            "train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            47040016,
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            remote_size=9912422,
        ),
        DataFile(
            "train_labels",
            "train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            60008,
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
            remote_size=28881,
        ),
        DataFile(
            "test_images",
            "t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            7840016,
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
            remote_size=1648877,
        ),
        DataFile(
            "test_labels",
            "t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            10008,
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
            remote_size=4542,
        ),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    description="Zalando Fashion-MNIST, 60k train / 10k test, grey levels",
    files=(
        DataFile(
            "train_images",
            "train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            47040016,
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            remote_size=26421880,
        ),
        DataFile(
            "train_labels",
            "train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60008,
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            remote_size=29515,
        ),
        DataFile(
            "test_images",
            "t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            7840016,
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
            remote_size=4422102,
        ),
        DataFile(
            "test_labels",
            "t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10008,
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            remote_size=5148,
        ),
    ),
    # Zalando's README links an S3 *website* endpoint, which serves http only; the same
    # archives are in their GitHub repository (README: "the dataset appears under
    # data/fashion"), and Keras' fashion_mnist.load_data() fetches them from its GCS bucket.
    # The http endpoint stays last: it is never tried without --from (https only), but the
    # error message then names it, so a user can pass it with --from deliberately.
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
)

BINARIZED_MNIST = DatasetSpec(
    name="binarized-mnist",
    description="Larochelle & Murray's fixed binarisation of MNIST (50k/10k/10k), the paper's Table 2",
    files=(
        DataFile(
            "train_images",
            "binarized_mnist_train.amat",
            "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
            78400000,
            "binarized_mnist_train.amat",
        ),
        DataFile(
            "valid_images",
            "binarized_mnist_valid.amat",
            "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
            15680000,
            "binarized_mnist_valid.amat",
        ),
        DataFile(
            "test_images",
            "binarized_mnist_test.amat",
            "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
            15680000,
            "binarized_mnist_test.amat",
        ),
    ),
    # Larochelle's files, the URL TensorFlow Datasets uses (its checksums.tsv gives the sizes
    # and sha256s above), over https.
    mirrors=("https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    kind="amat",
    prebinarized=True,
    splits=("train", "valid", "test"),
)

DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (MNIST, FASHION_MNIST, BINARIZED_MNIST)}

# `draw evaluate --split`: test; valid (binarized-mnist's own, else the last 10k of train); train.
EVAL_SPLITS = ("test", "valid", "train")


def get_spec(name: str) -> DatasetSpec:
    import difflib

    from drawcli.errors import DrawError

    try:
        return DATASETS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list(DATASETS), n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise DrawError(f"unknown data set {name!r}{hint}; known data sets: {', '.join(DATASETS)}") from None
