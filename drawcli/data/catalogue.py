"""The registry of data sets: files, checksums, mirrors, image shape, splits.

Pure data, no I/O and no torch. The loader (loading.py) and the downloader
(download.py) both read it, so a data set is described exactly once.

Authority for integrity is the sha256 of each file's *decompressed* contents:
it does not depend on how a mirror gzipped the file. The official archives'
own hashes are kept as a fast path for files that came from an official host.

Some sets are published with an md5 alone (svhn, cifar10): for those files
``sha256`` is None and the authority is the md5 *and* the exact size of the file
as downloaded, never decompressed (cifar10's .tar.gz is kept as it is). An md5
still pins the bytes here: what matters is a second preimage of a fixed digest,
which is not feasible for MD5 (only collisions of two chosen files are).

A set can also be built locally from another one (``built_from``): its files are
made by drawcli, deterministically, and their sha256 is recorded like any other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataFile:
    role: str  # train_images, train_labels, test_images, ... (what the loader asks for)
    name: str  # decompressed file name under DATA_DIR/<dataset>/
    sha256: str | None  # of the decompressed contents: the authority; None: md5 + size are (see below)
    size: int  # decompressed size in bytes (as downloaded when sha256 is None)
    remote: str  # file name on the mirrors (often NAME.gz)
    remote_md5: str | None = None  # official archive's md5: a fast path, or the authority when sha256 is None
    remote_size: int | None = None  # the official archive's size (a mirror's gzip may differ a little)

    @property
    def as_downloaded(self) -> bool:
        """Verified by md5 + size of the bytes as downloaded, and stored exactly so (never gunzipped)."""
        return self.sha256 is None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is base + remote
    height: int = 28
    width: int = 28
    # idx (IDX ubyte), amat (rows of 0/1 digits), mat (SVHN's MATLAB files), cifar (python pickles in a .tar.gz)
    kind: str = "idx"
    prebinarized: bool = False  # pixels already 0/1: no further binarisation
    splits: tuple[str, ...] = ("train", "test")
    channels: int = 1  # 1: uint8 arrays (N, H, W); 3: colour, uint8 (N, 3, H, W), channel first
    extras: tuple[DataFile, ...] = ()  # optional files, fetched only when asked (svhn's extra set)
    # Plain-http mirrors may be used without --from: only for files pinned by the registry
    # (a tampered transfer fails the md5/sha256 + size check and is never installed).
    http_mirrors: bool = False
    built_from: str | None = None  # made locally from this installed data set, not downloaded

    def file(self, role: str) -> DataFile:
        for f in self.files + self.extras:
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

SVHN = DatasetSpec(
    name="svhn",
    description="Street View House Numbers, cropped digits (format 2), 73,257 train / 26,032 test, colour 32x32 "
    "(--extra: 531,131 more training images, 1.3 GB)",
    files=(
        DataFile("train_images", "train_32x32.mat", None, 182040794, "train_32x32.mat",
                 "e26dedcc434d2e4c54c9b2d4a06d8373"),
        DataFile("test_images", "test_32x32.mat", None, 64275384, "test_32x32.mat",
                 "eb5a983be6a315427106f1b164d9cef3"),
    ),
    # Size from TensorFlow Datasets' url_checksums/svhn_cropped.txt (1,329,278,602 bytes).
    extras=(
        DataFile("extra_images", "extra_32x32.mat", None, 1329278602, "extra_32x32.mat",
                 "a93ce644f1a588dc4d68dda5feec44a7"),
    ),
    # The official host serves http only. Allowed without --from because every file is
    # pinned by md5 + exact size: a tampered or truncated transfer is deleted, never used.
    mirrors=("http://ufldl.stanford.edu/housenumbers/",),
    http_mirrors=True,
    height=32,
    width=32,
    channels=3,
    kind="mat",
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    description="CIFAR-10 (Krizhevsky), 50k train / 10k test, colour 32x32",
    files=(
        DataFile(
            "archive",
            "cifar-10-python.tar.gz",
            None,
            170498071,
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    height=32,
    width=32,
    channels=3,
    kind="cifar",
)

# Built by `draw download two-digit-mnist` from the installed mnist (drawcli/data/twodigit.py):
# the sha256s are those of the files built from the registry's MNIST with twodigit.SEED.
TWO_DIGIT_MNIST = DatasetSpec(
    name="two-digit-mnist",
    description="Two MNIST digits on a 60x60 canvas (the paper's section 4.2), 60k train / 10k test, "
    "built locally from mnist",
    files=(
        DataFile(
            "train_images",
            "train-images-idx3-ubyte",
            "269d013423c97e55fbaab29b99dba449c1ede921e21360a0f3f4bb1d6f0100d9",
            216000016,
            "train-images-idx3-ubyte",
        ),
        DataFile(
            "train_layout",
            "train-layout-idx2-int",
            "7c90dda88712f430755851df2a558c2a95bc9b1ba9ed499c78c641ffe99ad37c",
            1920012,
            "train-layout-idx2-int",
        ),
        DataFile(
            "test_images",
            "t10k-images-idx3-ubyte",
            "f273b96ebb0d69015f29b7f577eebdcd6c8ab133521fc443e63c212bd3123920",
            36000016,
            "t10k-images-idx3-ubyte",
        ),
        DataFile(
            "test_layout",
            "t10k-layout-idx2-int",
            "eb600b2d4e3786d59c0459a9710f3ca3648805ad9537017dcff1633c3669f8db",
            320012,
            "t10k-layout-idx2-int",
        ),
    ),
    mirrors=(),
    height=60,
    width=60,
    built_from="mnist",
)

DATASETS: dict[str, DatasetSpec] = {
    d.name: d for d in (MNIST, FASHION_MNIST, BINARIZED_MNIST, SVHN, CIFAR10, TWO_DIGIT_MNIST)
}

FOLDER_PREFIX = "folder:"  # --dataset folder:PATH: the user's own pictures (drawcli/data/folders.py)


def is_folder(name: str) -> bool:
    """A ``folder:PATH`` data set rather than a registry name."""
    return name.startswith(FOLDER_PREFIX)

# `draw evaluate --split`: test; valid (binarized-mnist's own, else the last 10k of train); train.
EVAL_SPLITS = ("test", "valid", "train")


def get_spec(name: str) -> DatasetSpec:
    import difflib

    from drawcli.core.errors import DrawError

    try:
        return DATASETS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list(DATASETS), n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise DrawError(f"unknown data set {name!r}{hint}; known data sets: {', '.join(DATASETS)}") from None
