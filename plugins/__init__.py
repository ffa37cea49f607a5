"""Built-in plugins, installed as lightningd_py.plugins.*"""
