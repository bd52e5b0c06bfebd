"""Key-value databases of Datum records (Caffe's db::DB): LMDB and LevelDB, and paths.

    db = open_db("mnist_train_lmdb")          # read-only; keys listed once, in key order
    len(db), db.keys[0], db.get(db.keys[0])

    with LMDBWriter("out_lmdb") as w:        # commits in chunks; the map grows when full
        w.put("00000000", datum_bytes)

``open_db`` tells the two kinds apart by their files (LMDB's data.mdb, LevelDB's CURRENT),
whatever a prototxt's ``backend`` says; both list their keys in bytewise order, the order
Caffe's cursors read them in. LevelDB goes through the plyvel package (pip install plyvel).
``resolve_path`` is the rule every data file follows: a relative path is looked up in the
current directory first (Caffe's rule), then in the folders given (e.g. the prototxt's).
"""

import os
import shutil
import threading

from minicnn.data.errors import DataError, need


def root_joined(root_folder, name):
    """An image list entry under a data layer's root_folder as Caffe reads it: the two strings
    concatenated (DeepLab's lists say "/JPEGImages/x.jpg" under root_folder "/data/VOC2012",
    which os.path.join would cut down to "/JPEGImages/x.jpg"); a root without its trailing
    slash gets one, where Caffe would glue "imagescat.jpg" together."""
    if not root_folder:
        return name
    if root_folder.endswith("/") or name.startswith("/"):
        return root_folder + name
    return os.path.join(root_folder, name)


def resolve_path(path, *dirs, what="file"):
    """``path`` if it exists as given (absolute, or relative to the current directory), else the
    first ``dir/path`` that exists; a DataError naming every place tried otherwise."""
    path = os.fspath(path)
    if not path:
        raise DataError(f"no {what} given (the path is empty)")
    if os.path.exists(path):
        return path
    tried = [os.path.abspath(path)]
    if not os.path.isabs(path):
        for d in dirs:
            if d:
                candidate = os.path.join(d, path)
                if os.path.exists(candidate):
                    return candidate
                if os.path.abspath(candidate) not in tried:   # the prototxt's folder is the cwd
                    tried.append(os.path.abspath(candidate))
    looked = "" if len(tried) == 1 else " (looked for " + ", ".join(tried) + ")"
    raise DataError(f"{what} not found{looked}", path)


def _lmdb():
    return need("lmdb")


def _is_leveldb(path):
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, "CURRENT"))
                                    or any(n.endswith(".ldb") for n in os.listdir(path)))


class _Shared:
    """One open database per process: python-lmdb refuses a second environment on the same
    file and LevelDB locks its folder, while a train and a test net often read the same
    source. Readers count themselves in (_acquire) and out (_release); the last one out closes
    the handle. (Not a weak reference with a finalizer: a lookup could find, and so revive, a
    holder whose finalizer was closing the handle in another thread.)"""

    def __init__(self, handle, table, key):
        self.handle, self.table, self.key = handle, table, key
        self.users, self.closed = 0, False


_SHARED_ENVS = {}                   # (st_dev, st_ino) of the data file -> _Shared LMDB env
_SHARED_LEVELDBS = {}               # real path -> _Shared plyvel DB
# Reentrant: a reader's __del__ may run (the cycle collector) while this thread holds it.
_SHARED_LOCK = threading.RLock()


def _acquire(table, key, open_handle):
    """The shared handle of ``key``, opened by ``open_handle()`` if no reader holds it."""
    with _SHARED_LOCK:
        while True:
            shared = table.get(key)
            if shared is None:
                shared = _Shared(open_handle(), table, key)
                table[key] = shared
            shared.users += 1
            if not shared.closed:            # else a reader's __del__ ran in between: again
                return shared


def _release(shared):
    with _SHARED_LOCK:
        shared.users -= 1
        if shared.users > 0 or shared.closed:
            return
        shared.closed = True
        if shared.table.get(shared.key) is shared:
            del shared.table[shared.key]
        try:
            shared.handle.close()
        except Exception:
            pass


def _open_shared(path):
    lmdb = _lmdb()
    subdir = os.path.isdir(path)
    st = os.stat(os.path.join(path, "data.mdb") if subdir else path)

    def open_env():
        try:
            return lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=subdir,
                             max_readers=512)
        except lmdb.Error as e:
            raise DataError(f"cannot open as an LMDB database: {e}", path) from None
    # an open environment keeps its file's inode, so a database replaced meanwhile is a new key
    return _acquire(_SHARED_ENVS, (st.st_dev, st.st_ino), open_env)


class LMDBReader:
    """A read-only LMDB of records: ``keys`` (bytes, in LMDB's sorted order), ``get(key)``,
    ``get_index(i)``, ``items()``. Safe to read from another thread (python-lmdb opens the
    environment with MDB_NOTLS); opened without a lock file, so read-only folders work.
    Readers of the same database share one environment."""
    _shared = env = None

    def __init__(self, path):
        self.path = path
        self._shared = _open_shared(path)
        self.env = self._shared.handle
        with self.env.begin(buffers=False) as txn:
            self.keys = list(txn.cursor().iternext(keys=True, values=False))

    def __len__(self):
        return len(self.keys)

    def get(self, key):
        if isinstance(key, str):
            key = key.encode()
        with self.env.begin(buffers=False) as txn:
            value = txn.get(key)
        if value is None:
            raise DataError(f"no record with key {key!r}", self.path)
        return value

    def get_index(self, i):
        return self.get(self.keys[i])

    def get_many(self, keys):
        """The values of several keys in one read transaction."""
        with self.env.begin(buffers=False) as txn:
            values = [txn.get(k) for k in keys]
        for k, v in zip(keys, values):
            if v is None:
                raise DataError(f"no record with key {k!r}", self.path)
        return values

    def items(self):
        with self.env.begin(buffers=False) as txn:
            yield from txn.cursor().iternext(keys=True, values=True)

    def close(self):
        """Let go of the environment (closed once no reader of this database holds it)."""
        shared, self._shared, self.env = self._shared, None, None
        if shared is not None:
            _release(shared)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _RecordWriter:
    """What the two writers share: a new folder (an existing one is an error unless
    ``overwrite``), puts buffered and committed every ``commit_every`` records, and a context
    manager that commits on success and only closes after an error. Subclasses open
    ``self._store`` and write a chunk in ``commit``."""

    def _new_folder(self, path, overwrite, commit_every):
        self.path = os.fspath(path)
        if os.path.lexists(self.path):
            if not overwrite:
                raise DataError("already exists (remove it, or ask to overwrite it)", self.path)
            remove_db(self.path)
        self.commit_every = commit_every
        self.count = 0
        self._pending = []

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode()
        if not key or len(key) > 511:
            raise DataError(f"keys must be 1 to 511 bytes (LMDB's limit), got {len(key)}: "
                            f"{key[:60]!r}", self.path)
        self._pending.append((key, bytes(value)))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def close(self):
        if self._store is not None:
            self.commit()
            self._store.close()
            self._store = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif self._store is not None:
            self._store.close()
            self._store = None


class LMDBWriter(_RecordWriter):
    """Write records into a new LMDB folder. When the memory map is full, the map size is
    doubled and the chunk written again, so ``map_size`` is only a starting guess (LMDB files
    are sparse: a large map costs no disk)."""

    def __init__(self, path, map_size=1 << 28, commit_every=1000, overwrite=False):
        lmdb = _lmdb()
        self._new_folder(path, overwrite, commit_every)
        os.makedirs(self.path)
        self.map_size = int(map_size)
        self._store = lmdb.open(self.path, map_size=self.map_size, subdir=True, meminit=False)

    def commit(self):
        lmdb = _lmdb()
        while self._pending:
            try:
                with self._store.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
            except lmdb.MapFullError:
                self.map_size *= 2                # the aborted chunk is written again
                self._store.set_mapsize(self.map_size)
                continue
            self.count += len(self._pending)
            self._pending = []


def remove_db(path):
    """Delete a database folder (or file)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def replace_db(tmp_path, path):
    """Move a finished database from ``tmp_path`` to ``path``, replacing what was there."""
    old = None
    if os.path.lexists(path):
        old = f"{path}.old-{os.getpid()}"
        os.rename(path, old)
    os.rename(tmp_path, path)
    if old:
        remove_db(old)




def _plyvel():
    return need("plyvel")


class LevelDBReader(LMDBReader):
    """A LevelDB of records, read as LMDBReader reads an LMDB: ``keys`` (bytes, in LevelDB's
    bytewise order), ``get``, ``get_index``, ``get_many``, ``items``."""
    db = None

    def __init__(self, path):
        plyvel = _plyvel()
        self.path = path
        real = os.path.realpath(path)

        def open_leveldb():
            try:
                return plyvel.DB(path, create_if_missing=False)
            except plyvel.Error as e:
                reason = e.args[0].decode(errors="replace") if e.args and isinstance(
                    e.args[0], bytes) else str(e)
                if "lock" in reason.lower():
                    raise DataError("another process has this LevelDB open (LevelDB allows "
                                    "one; data-parallel ranks each open their sources): "
                                    "convert it to LMDB, which any number of processes "
                                    "read", path) from None
                raise DataError(f"cannot open as a LevelDB database: {reason}", path) from None
        shared = _acquire(_SHARED_LEVELDBS, real, open_leveldb)
        self._shared = shared
        self.db = shared.handle
        self.keys = list(self.db.iterator(include_value=False))

    def get(self, key):
        if isinstance(key, str):
            key = key.encode()
        value = self.db.get(key)
        if value is None:
            raise DataError(f"no record with key {key!r}", self.path)
        return value

    def get_many(self, keys):
        with self.db.snapshot() as snapshot:
            values = [snapshot.get(k) for k in keys]
        for k, v in zip(keys, values):
            if v is None:
                raise DataError(f"no record with key {k!r}", self.path)
        return values

    def items(self):
        yield from self.db.iterator()

    def close(self):
        shared, self._shared, self.db = self._shared, None, None
        if shared is not None:
            _release(shared)


class LevelDBWriter(_RecordWriter):
    """Write records into a new LevelDB folder, with Caffe's options (64 KiB blocks, a 256 MiB
    write buffer), a write batch per chunk."""

    def __init__(self, path, commit_every=1000, overwrite=False):
        plyvel = _plyvel()
        self._new_folder(path, overwrite, commit_every)
        self._store = plyvel.DB(self.path, create_if_missing=True, error_if_exists=True,
                                block_size=65536, write_buffer_size=256 << 20)

    def commit(self):
        with self._store.write_batch() as batch:
            for key, value in self._pending:
                batch.put(key, value)
        self.count += len(self._pending)
        self._pending = []


def db_writer(path, backend="lmdb", **options):
    """A writer of a new database of ``backend`` "lmdb" or "leveldb" (Caffe's --backend)."""
    kinds = {"lmdb": LMDBWriter, "leveldb": LevelDBWriter}
    if str(backend).lower() not in kinds:
        raise DataError(f"unknown database backend '{backend}' (lmdb or leveldb)", path)
    if str(backend).lower() == "leveldb":
        options.pop("map_size", None)
    return kinds[str(backend).lower()](path, **options)


def open_db(path, backend=None):
    """Open a database of records for reading. LMDB and LevelDB are recognised by their
    content whatever ``backend`` says ("LMDB"/"LEVELDB", Caffe's DataParameter.backend, whose
    default is LEVELDB although most nets read LMDB)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError("database not found", path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "data.mdb")):
        return LMDBReader(path)
    if _is_leveldb(path):
        return LevelDBReader(path)
    if os.path.isdir(path):
        raise DataError("neither an LMDB database (the folder has no data.mdb) nor a LevelDB "
                        "one (no CURRENT file)", path)
    return LMDBReader(path)               # a single-file LMDB (opened with subdir=False)
