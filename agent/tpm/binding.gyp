{
  "targets": [
    {
      "target_name": "edgeid_tpm",
      "sources": ["src/addon.c", "src/commands.c", "src/watchdog.c", "src/tls_key.cc"],
      "defines": [
        "NAPI_VERSION=8",
        "OPENSSL_API_COMPAT=0x10100000L",
        "OPENSSL_SUPPRESS_DEPRECATED"
      ],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags_c": ["-std=gnu11"],
      "cflags_cc": ["-std=gnu++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-ltss2-esys", "-ltss2-tctildr", "-ltss2-mu", "-ltss2-rc", "-lpthread"]
    }
  ]
}
