#!/usr/bin/env bash
# Builds a CMS-signed SWUpdate image for the DDI acceptance test (tests/api/ddi.rs):
#   make_swu.sh <dir> <version> <install path>
# writes <dir>/signer.pem (the certificate SWUpdate checks with -k, EKU emailProtection),
# <dir>/payload.bin (what the rawfile handler writes to <install path>) and <dir>/update.swu
# (a cpio "crc" archive: sw-description, sw-description.sig, payload.bin).
set -euo pipefail
dir=$1 version=$2 target=$3
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout signer.key -out signer.pem -days 2 \
  -subj "/CN=updraft-ddi-test" \
  -addext "keyUsage=digitalSignature" -addext "extendedKeyUsage=emailProtection" 2>/dev/null
head -c 65536 /dev/urandom > payload.bin
printf 'updraft %s\n' "$version" >> payload.bin
sha=$(sha256sum payload.bin | cut -d' ' -f1)
cat > sw-description <<DESC
software =
{
	version = "$version";
	description = "Updraft DDI acceptance test";
	hardware-compatibility: [ "1.0" ];
	files: (
		{
			filename = "payload.bin";
			path = "$target";
			type = "rawfile";
			sha256 = "$sha";
		}
	);
};
DESC
openssl cms -sign -in sw-description -out sw-description.sig -signer signer.pem -inkey signer.key \
  -outform DER -nosmimecap -binary
printf '%s\n' sw-description sw-description.sig payload.bin | cpio -o -H crc --quiet > update.swu
