"""What the commands show on the terminal: the screen, progress lines, fitted tables,
and the libraries' own messages kept quiet.
"""
