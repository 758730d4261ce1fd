# install / uninstall: filled in by the shipping work (issue 5)
install:
	@echo "install: not yet implemented" >&2; exit 1
uninstall:
	@echo "uninstall: not yet implemented" >&2; exit 1
