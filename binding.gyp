{
  "target_defaults": {
    "cflags": ["-Wall", "-Wextra", "-Wshadow", "-Wformat=2", "-Wno-unused-parameter", "-D_GNU_SOURCE", "-O2", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
    "cflags_c": ["-std=gnu11"]
  },
  "targets": [
    {
      "target_name": "fuse_svc_socket",
      "sources": ["helper/native/socket.c"]
    },
    {
      "target_name": "fuse-svc-launcher",
      "type": "executable",
      "sources": ["helper/native/launcher.c", "helper/native/launcher-init.c"],
      "libraries": ["-lseccomp"]
    },
    {
      "target_name": "fusermount-standin",
      "type": "executable",
      "sources": ["helper/native/fusermount-standin.c"],
      "ldflags": ["-static"]
    },
    {
      "target_name": "fuse-svc-client",
      "type": "executable",
      "sources": ["helper/native/client.c", "helper/native/mount-helper.c", "helper/native/json.c"],
      "ldflags": ["-static"]
    },
    {
      "target_name": "sandbox-probe",
      "type": "executable",
      "sources": ["test/native/sandbox-probe.c"]
    },
    {
      "target_name": "service-server",
      "type": "executable",
      "sources": ["test/native/service-server.c"]
    },
    {
      "target_name": "service-client",
      "type": "executable",
      "sources": ["test/native/service-client.c"]
    },
    {
      "target_name": "sandbox-probe-hog",
      "type": "executable",
      "sources": ["test/native/hog.c"]
    },
    {
      "target_name": "fuse-hang",
      "type": "executable",
      "sources": ["test/native/fuse-hang.c"]
    },
    {
      "target_name": "priv-probe",
      "type": "executable",
      "sources": ["test/native/priv-probe.c"],
      "ldflags": ["-static"]
    },
    {
      "target_name": "mount-probe",
      "type": "executable",
      "sources": ["test/native/mount-probe.c"],
      "ldflags": ["-static"]
    }
  ]
}
