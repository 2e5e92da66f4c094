package configs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/x509"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `make image` builds the container image with podman (into a private
// store), and the image itself is checked: its config (non-root user,
// keeper as the entrypoint, OCI labels naming this commit), its files (a
// static keeper, the CA bundle, a passwd entry for the user), and `keeper
// version` run from the image's filesystem as the image's user. Where the
// machine refuses to start containers (as sandboxes do), the binary runs
// chrooted into the image's exported root instead.
func TestContainerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keeper and an image; run without -short")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed (.ci/run installs it); `make image` also works with buildah or docker")
	}
	dir := t.TempDir()
	store := []string{"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"), "--storage-driver", "vfs"}
	pm := func(args ...string) []string { return append(append([]string{}, store...), args...) }
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	image := "localhost/keeper-test:" + hex.EncodeToString(suffix[:])
	t.Cleanup(func() { _, _ = runErr(podman, pm("rmi", "--force", image)...) })

	start := time.Now()
	run(t, "make", "-C", root, "image", "BIN="+filepath.Join(dir, "bin"), "IMAGE="+image,
		"CONTAINER="+podman+" "+strings.Join(store, " "))
	t.Logf("make image (go build and podman build): %s", time.Since(start).Round(time.Millisecond))
	oci := filepath.Join(dir, "oci")
	run(t, podman, pm("save", "--format", "oci-dir", "-o", oci, image)...)
	cfg, layers := readOCI(t, oci)
	rootfs := filepath.Join(dir, "rootfs")
	for _, l := range layers {
		extractLayer(t, l, rootfs)
	}

	// The user is not root, by number (what runAsNonRoot checks) and by
	// the image's own passwd.
	uid, gid, ok := strings.Cut(cfg.Config.User, ":")
	n, err := strconv.Atoi(uid)
	if !ok || err != nil || n == 0 {
		t.Fatalf("image user %q: want a numeric non-root uid:gid", cfg.Config.User)
	}
	if name := passwdName(t, filepath.Join(rootfs, "etc/passwd"), uid); name == "" || name == "root" {
		t.Errorf("uid %s is %q in the image's /etc/passwd", uid, name)
	}
	// The entrypoint is keeper.
	if len(cfg.Config.Entrypoint) != 1 || path.Base(cfg.Config.Entrypoint[0]) != "keeper" {
		t.Fatalf("entrypoint %q, want keeper", cfg.Config.Entrypoint)
	}
	entry := cfg.Config.Entrypoint[0]
	// OCI labels: source, version, and the commit it was built from.
	head := strings.TrimSpace(string(run(t, "git", "-C", root, "rev-parse", "HEAD")))
	for _, k := range []string{"source", "version", "revision"} {
		if cfg.Config.Labels["org.opencontainers.image."+k] == "" {
			t.Errorf("no org.opencontainers.image.%s label: %v", k, cfg.Config.Labels)
		}
	}
	if rev := cfg.Config.Labels["org.opencontainers.image.revision"]; rev != head {
		t.Errorf("revision label %q, HEAD is %s", rev, head)
	}
	// keeper is static: the empty base has no loader and no libc.
	bin := filepath.Join(rootfs, entry)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s in the image: %v", entry, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s needs a dynamic loader; build it with CGO_ENABLED=0", entry)
		}
	}
	f.Close()
	// The CA bundle, for TLS to etcd, Redis and the collector.
	pem, err := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || !x509.NewCertPool().AppendCertsFromPEM(pem) {
		t.Errorf("no usable CA bundle at /etc/ssl/certs/ca-certificates.crt: %v", err)
	}

	// keeper version, from the image.
	out, errRun := runErr(podman, pm("run", "--rm", image, "version")...)
	how := "podman run"
	if errRun != nil {
		t.Logf("podman run refused here, so keeper runs chrooted into the image's root: %v", firstLine(errRun.Error()))
		how = "chroot into the exported image"
		cmd := exec.Command(bin, "version")
		if os.Geteuid() == 0 {
			cmd = exec.Command("chroot", "--userspec="+uid+":"+gid, rootfs, entry, "version")
		} else {
			how = "exec from the exported image (not root: no chroot)"
		}
		cmd.Env = []string{}
		if out, err = cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: keeper version: %v\n%s", how, err, out)
		}
	}
	version := strings.TrimSpace(string(out))
	t.Logf("%s: %s", how, version)
	for _, want := range []string{"keeper ", "commit " + head, runtime.Version(), "linux/"} {
		if !strings.Contains(version, want) {
			t.Errorf("keeper version %q lacks %q", version, want)
		}
	}
}

type ociConfig struct {
	Config struct {
		User       string            `json:"User"`
		Entrypoint []string          `json:"Entrypoint"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
}

// readOCI reads an OCI image layout: the image config and its layer blobs.
func readOCI(t *testing.T, dir string) (ociConfig, []string) {
	t.Helper()
	blob := func(digest string) string {
		alg, hexd, ok := strings.Cut(digest, ":")
		if !ok || strings.ContainsAny(hexd, "/.") {
			t.Fatalf("bad digest %q", digest)
		}
		return filepath.Join(dir, "blobs", alg, hexd)
	}
	readJSON := func(file string, v any) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	type desc struct {
		Digest string `json:"digest"`
	}
	var index struct {
		Manifests []desc `json:"manifests"`
	}
	readJSON(filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests", len(index.Manifests))
	}
	var manifest struct {
		Config desc   `json:"config"`
		Layers []desc `json:"layers"`
	}
	readJSON(blob(index.Manifests[0].Digest), &manifest)
	var cfg ociConfig
	readJSON(blob(manifest.Config.Digest), &cfg)
	var layers []string
	for _, l := range manifest.Layers {
		layers = append(layers, blob(l.Digest))
	}
	return cfg, layers
}

// extractLayer unpacks one layer (tar, gzipped or not) under dir, applying
// whiteouts and refusing paths that leave dir.
func extractLayer(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			t.Fatal(err)
		}
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		name := path.Clean("/" + h.Name)
		target := filepath.Join(dir, name)
		base := path.Base(name)
		if strings.HasPrefix(base, ".wh.") {
			_ = os.RemoveAll(filepath.Join(filepath.Dir(target), strings.TrimPrefix(base, ".wh.")))
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(target, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(target), 0o755); err == nil {
				var out *os.File
				if out, err = os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(h.Mode)&0o755|0o400); err == nil {
					_, err = io.Copy(out, tr)
					if cerr := out.Close(); err == nil {
						err = cerr
					}
				}
			}
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(target), 0o755); err == nil {
				err = os.Symlink(h.Linkname, target)
			}
		default:
			t.Logf("%s: skipping %s (type %c)", file, h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatalf("extract %s: %v", h.Name, err)
		}
	}
}

// passwdName is the user name of uid in a passwd file.
func passwdName(t *testing.T, file, uid string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Errorf("the image has no %s: %v", filepath.Base(file), err)
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Split(line, ":"); len(f) >= 3 && f[2] == uid {
			return f[0]
		}
	}
	return ""
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
