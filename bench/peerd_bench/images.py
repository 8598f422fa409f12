"""Images written by hand: uncompressed tar layers (no gzip), config, manifest, OCI layout; pushed
to a registry with curl and imported into containerd with `ctr images import`."""

import hashlib
import io
import json
import os
import random
import re
import subprocess
import tarfile
import tempfile

from .common import MiB, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, curl_code, sh


def tar_header(name, size):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    return ti.tobuf(format=tarfile.USTAR_FORMAT)


def write_layer(path, payload_size, seed=None):
    """A tar layer with one file of random bytes; returns (digest, size)."""
    h = hashlib.sha256()
    rng = random.Random(seed) if seed is not None else None
    with open(path, "wb") as f:
        hdr = tar_header("data/blob.bin", payload_size)
        f.write(hdr)
        h.update(hdr)
        left = payload_size
        while left:
            n = min(left, 8 * MiB)
            b = rng.randbytes(n) if rng else os.urandom(n)
            f.write(b)
            h.update(b)
            left -= n
        tail = b"\0" * ((-payload_size) % 512) + b"\0" * 1024
        f.write(tail)
        h.update(tail)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


class Layout:
    """An OCI image layout directory; each image is one manifest with tar layers."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        self.refs = {}  # ref -> {"manifest": desc, "layers": [desc], "config": desc}

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def add_bytes(self, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.blob_path(d), "wb") as f:
            f.write(data)
        return d

    def add_layer(self, payload_size, seed=None):
        tmp = os.path.join(self.path, "layer.tmp")
        d, size = write_layer(tmp, payload_size, seed)
        os.replace(tmp, self.blob_path(d))
        return {"mediaType": OCI_LAYER, "digest": d, "size": size}

    def add_image(self, ref, layers):
        cfg = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        }, separators=(",", ":")).encode()
        cdesc = {"mediaType": OCI_CONFIG, "digest": self.add_bytes(cfg), "size": len(cfg)}
        man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": layers},
                         separators=(",", ":")).encode()
        mdesc = {"mediaType": OCI_MANIFEST, "digest": self.add_bytes(man), "size": len(man)}
        self.refs[ref] = {"manifest": mdesc, "config": cdesc, "layers": layers}
        self._write_index()
        return self.refs[ref]

    def _index(self, tags):
        """index.json for {tag: ref}."""
        return {"schemaVersion": 2, "manifests": [
            dict(self.refs[r]["manifest"], annotations={"org.opencontainers.image.ref.name": t})
            for t, r in tags.items()]}

    def _write_index(self):
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(self._index({r: r for r in self.refs}), f)

    def push(self, ref, reg, repo, tag="v1", ns=None):
        """Push with the distribution API through curl (monolithic uploads, streamed with -T).
        skopeo would gzip the uncompressed layers on the way to a registry (and so change their
        digests); this keeps the bytes as they are."""
        img = self.refs[ref]
        for d in [img["config"]] + img["layers"]:
            if curl_code("-I", f"http://{reg}/v2/{repo}/blobs/{d['digest']}", ns=ns) == "200":
                continue
            hdrs = sh(["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST",
                       f"http://{reg}/v2/{repo}/blobs/uploads/"], ns=ns)
            loc = re.search(r"(?im)^location:\s*(\S+)", hdrs).group(1)
            if loc.startswith("/"):
                loc = f"http://{reg}{loc}"
            loc += ("&" if "?" in loc else "?") + "digest=" + d["digest"]
            code = curl_code("-H", "Expect:", "-H", "Content-Type: application/octet-stream", "-T",
                             self.blob_path(d["digest"]), loc, ns=ns, timeout=900)
            if code != "201":
                raise RuntimeError(f"blob upload {d['digest']} to {reg}/{repo}: HTTP {code}")
        m = img["manifest"]
        code = curl_code("-H", "Expect:", "-H", f"Content-Type: {m['mediaType']}", "-T", self.blob_path(m["digest"]),
                         f"http://{reg}/v2/{repo}/manifests/{tag}", ns=ns)
        if code != "201":
            raise RuntimeError(f"manifest upload to {reg}/{repo}:{tag}: HTTP {code}")
        got = sh(["curl", "-s", "-I", "-H", f"Accept: {m['mediaType']}", f"http://{reg}/v2/{repo}/manifests/{tag}"],
                 ns=ns)
        if m["digest"] not in got:
            raise RuntimeError(f"{reg}/{repo}:{tag} is not {m['digest']}: {got}")

    def ctr_import(self, sock, ref, name):
        """Import one image into containerd (no unpack) as image record NAME, streaming a tar."""
        img = self.refs[ref]
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(["ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--no-unpack",
                              "--base-name", name.rsplit(":", 1)[0], "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
        try:
            with tarfile.open(fileobj=p.stdin, mode="w|", format=tarfile.USTAR_FORMAT) as t:
                def add(name_in_tar, data=None, path=None):
                    ti = tarfile.TarInfo(name_in_tar)
                    ti.mode = 0o644
                    if path:
                        ti.size = os.path.getsize(path)
                        with open(path, "rb") as f:
                            t.addfile(ti, f)
                    else:
                        ti.size = len(data)
                        t.addfile(ti, io.BytesIO(data))
                add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                add("index.json", json.dumps(self._index({name.rsplit(":", 1)[1]: ref})).encode())
                for d in [img["manifest"], img["config"]] + img["layers"]:
                    add("blobs/sha256/" + d["digest"].split(":", 1)[1], path=self.blob_path(d["digest"]))
            p.stdin.close()
            p.wait(timeout=900)
        except BaseException:
            p.kill()
            p.wait()
            raise
        if p.returncode:
            errf.seek(0)
            raise RuntimeError(f"ctr import failed: {errf.read().decode(errors='replace')[-1000:]}")
