"""One definition of every format hvdump reads or writes, in both byte orders."""
