"""Files in and out: atomic single files (:mod:`.atomic`), the lock (:mod:`.lock`), all-or-nothing
output sets and folders (:mod:`.transaction`) under the ownership marker (:mod:`.ownership`),
and the JSON reader and encoder (:mod:`.json_io`)."""
