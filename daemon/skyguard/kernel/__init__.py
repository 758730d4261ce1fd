"""The kernel side: compiles and loads bpf/ through bcc, reads and writes its maps, runs BPF_PROG_TEST_RUN, keeps
the flow-table snapshot, and attaches XDP to interfaces. The only package that imports bcc."""
